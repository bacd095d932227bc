"""A file replaced during one read: every front end gives old bytes or its error, never a mix.

docs/SEMANTICS.md, principle 1 and "Reads: a change during a read": a file changed after the
first byte of a read was sent makes the read fail (a short HTTP body, an error on gRPC and
short-circuit, ESTALE through fsspec and meshfs); it never goes on with the new version's bytes.

Each case starts a ``meshd embedded`` with 64 KiB pages over a local directory holding a
32 MiB file (512 pages). A reader of one front end takes the first 256 KiB of ONE open stream,
the file is replaced by bytes of another length (in the under-store directory: temp file +
``os.replace``, a new inode hence a new version; or through the mesh: an S3 PUT), then the
reader drains the stream. What it got must be a prefix of the old bytes, and anything short
of the whole old file must have been reported as the front end's documented error.

So that "old bytes" cannot pass because everything was cached before the replace, each case
asserts (the node's report, right after the replace) that at most 512 - 64 pages had been
fetched: whatever was in flight (read-ahead, socket buffers), the rest of the old file had to
be fetched after the replace, where it no longer exists.
"""

from __future__ import annotations

import errno
import http.client
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import botocore.exceptions
import fsspec
import grpc
import pytest
import requests
from hdfs import HdfsError, InsecureClient

from meshd.client.sdk import MeshClient
from meshd.errors import VersionChanged
from meshd.rpc import mesh_pb2 as pb
from meshd.rpc import mesh_pb2_grpc as pb_grpc
from tests.data import payload
from tests.fuse_proc import MeshfsProcess
from tests.meshd_proc import MeshdProcess
from tests.test_s3_gateway import AK, SK, s3client

KiB, MiB = 1 << 10, 1 << 20
PAGE = 64 * KiB
OLD_SIZE = 32 * MiB  # 512 pages: far more than read-ahead and socket buffers hold
NEW_SIZE = 9 * MiB + 4321  # another length: the old size cannot be trusted either
CHUNK = 64 * KiB  # what a reader asks for at a time
FIRST = 256 * KiB  # read before the replace
MARGIN = 64  # pages of the old file that must still be unfetched at the replace
MESH_PATH, BUCKET, KEY = "/data/f.bin", "data", "f.bin"


@dataclass
class Case:
    node: MeshdProcess
    store: Path
    tmp: Path
    old: bytes
    new: bytes

    def replace_in_store(self) -> None:
        tmp = self.store / ".f.bin.tmp"
        tmp.write_bytes(self.new)
        os.replace(tmp, self.store / KEY)

    def replace_through_s3(self) -> None:
        s3 = s3client(self.node.endpoints["s3"])
        try:
            s3.put_object(Bucket=BUCKET, Key=KEY, Body=self.new)
        finally:
            s3.close()


# ----------------------------------------------------------------------------- readers
# Each reader is one open stream as a generator of chunks; the test replaces the file
# between two chunks. Errors raised while draining are judged by ALLOWED below.


def read_s3(case: Case) -> Iterator[bytes]:
    s3 = s3client(case.node.endpoints["s3"])
    try:
        body = s3.get_object(Bucket=BUCKET, Key=KEY)["Body"]
        while chunk := body.read(CHUNK):  # the last read checks Content-Length
            yield chunk
    finally:
        s3.close()


def read_webhdfs(case: Case) -> Iterator[bytes]:
    client = InsecureClient(case.node.endpoints["webhdfs"], user="alice")
    with client.read(MESH_PATH, chunk_size=CHUNK) as reader:
        yield from reader


def read_http(case: Case) -> Iterator[bytes]:
    url = urlsplit(case.node.http)
    conn = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=60)
    try:
        conn.request("GET", "/v1/files" + MESH_PATH)
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()[:300]
        want, got = int(resp.headers["Content-Length"]), 0
        while got < want:
            chunk = resp.read(min(CHUNK, want - got))
            if not chunk:  # http.client's read(amt) does not raise on a short body: we do
                raise http.client.IncompleteRead(b"", want - got)
            got += len(chunk)
            yield chunk
    finally:
        conn.close()


def _stub(case: Case) -> tuple[grpc.Channel, pb_grpc.MeshStub]:
    channel = grpc.insecure_channel(case.node.endpoint)
    return channel, pb_grpc.MeshStub(channel)


def read_grpc(case: Case) -> Iterator[bytes]:
    channel, stub = _stub(case)
    try:
        for msg in stub.Read(pb.ReadRequest(path=MESH_PATH, offset=0, length=-1)):
            yield msg.data
    finally:
        channel.close()


def read_grpc_pinned(case: Case) -> Iterator[bytes]:
    """Two calls: the first Read's status (on its first chunk) pins the second one."""
    fields = pb.ReadRequest.DESCRIPTOR.fields_by_name
    assert "version" in fields and "size" in fields, \
        "ReadRequest has no version/size fields yet (proto change not landed)"
    channel, stub = _stub(case)
    try:
        first = list(stub.Read(pb.ReadRequest(path=MESH_PATH, offset=0, length=FIRST)))
        status = first[0].status
        assert status.version and status.size == len(case.old), status
        yield b"".join(m.data for m in first)
        rest = pb.ReadRequest(path=MESH_PATH, offset=FIRST, length=-1,
                              version=status.version, size=status.size)
        for msg in stub.Read(rest):
            yield msg.data
    finally:
        channel.close()


def read_short_circuit(case: Case) -> Iterator[bytes]:
    with MeshClient(case.node.endpoint) as client:
        assert client._sc() is not None, "the short-circuit socket is not in use"
        yield from client.iter_read(MESH_PATH, chunk_size=CHUNK)


def read_fsspec(case: Case) -> Iterator[bytes]:
    fs = fsspec.filesystem("mesh", endpoint=case.node.endpoint, skip_instance_cache=True)
    with fs.open(MESH_PATH, "rb", block_size=FIRST) as f:
        yield f.read(FIRST)  # block 1 (fsspec's read-ahead cache may hold block 2 too)
        yield f.read()  # the rest of the file


def read_meshfs(case: Case) -> Iterator[bytes]:
    mnt = MeshfsProcess(case.tmp / "mnt", str(case.node.data_dir), ["--ttl", "1"]).start()
    try:
        with open(mnt.mountpoint / "data" / KEY, "rb", buffering=0) as f:
            while chunk := f.read(CHUNK):
                yield chunk
    finally:
        mnt.stop()


def _estale(e: BaseException) -> bool:
    return isinstance(e, OSError) and e.errno == errno.ESTALE


def _aborted(e: BaseException) -> bool:
    return isinstance(e, grpc.RpcError) and e.code() == grpc.StatusCode.ABORTED


def _types(*kinds: type[BaseException]) -> Callable[[BaseException], bool]:
    return lambda e: isinstance(e, kinds)


Reader = Callable[[Case], Iterator[bytes]]
# front end -> (reader, the documented error of a read cut by a change)
FRONT_ENDS: dict[str, tuple[Reader, Callable[[BaseException], bool]]] = {
    "s3": (read_s3, _types(botocore.exceptions.IncompleteReadError,
                           botocore.exceptions.ResponseStreamingError)),
    "webhdfs": (read_webhdfs, _types(requests.exceptions.ChunkedEncodingError,
                                     requests.exceptions.ConnectionError, HdfsError)),
    "http": (read_http, _types(http.client.IncompleteRead, ConnectionError)),
    "grpc": (read_grpc, _aborted),
    "grpc-pinned": (read_grpc_pinned, _aborted),
    "short-circuit": (read_short_circuit, _types(VersionChanged)),
    "fsspec": (read_fsspec, _estale),
    "meshfs": (read_meshfs, _estale),
}


# ----------------------------------------------------------------------------- the test


@pytest.fixture
def case(meshd: Callable[..., MeshdProcess], tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Case:
    monkeypatch.setenv("MESH_SHORT_CIRCUIT", "1")
    store = tmp_path / "store"
    store.mkdir()
    old, new = payload(OLD_SIZE, seed=11), payload(NEW_SIZE, seed=22)
    (store / KEY).write_bytes(old)
    node = meshd([f"/data={store.as_uri()}"],
                 ["--page-size", "64KiB", "--s3-access-key", AK, "--s3-secret-key", SK])
    return Case(node, store, tmp_path, old, new)


def _page_fetches(node: MeshdProcess) -> int:
    with node.client() as c:
        return int(c.report()["page_fetches"])


def _mix_report(got: bytes, old: bytes, new: bytes) -> str:
    at = next((i for i, (a, b) in enumerate(zip(got, old, strict=False)) if a != b), len(old))
    piece = got[at:at + 4096]
    source = "the NEW file's bytes" if piece and new[at:at + len(piece)] == piece else "unknown bytes"
    return f"{len(got)} bytes read, not a prefix of the old file: differs at {at} with {source}"


@pytest.mark.parametrize("replace", ["store", "s3-put"])
@pytest.mark.parametrize("front", list(FRONT_ENDS))
def test_replaced_mid_read_gives_old_bytes_or_the_error(case: Case, front: str, replace: str) -> None:
    reader, documented = FRONT_ENDS[front]
    stream = reader(case)
    got, error = bytearray(), None
    try:
        while len(got) < FIRST:
            got += next(stream)
        assert got == case.old[:len(got)], "bytes read before the replace are wrong"
        (case.replace_in_store if replace == "store" else case.replace_through_s3)()
        fetched = _page_fetches(case.node)
        pages = OLD_SIZE // PAGE
        assert fetched <= pages - MARGIN, (
            f"{fetched} of {pages} pages were fetched before the replace: the test proves nothing")
        try:
            for chunk in stream:
                got += chunk
        except Exception as e:
            error = e
    finally:
        stream.close()
    assert bytes(got) == case.old[:len(got)], _mix_report(bytes(got), case.old, case.new)
    if error is not None:
        assert documented(error), f"not the documented error: {type(error).__name__}: {error}"
    else:
        assert len(got) == len(case.old), (
            f"the read ended after {len(got)} of {len(case.old)} bytes without an error")
